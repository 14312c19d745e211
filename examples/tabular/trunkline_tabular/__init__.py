"""A tabular family for Trunkline: a feature vector through an MLP trunk slimmable by width,
one task-gated mixture of experts, and a slimmable head per task (docs/adapters.md, the worked
example). Installed, it is the `tabular` entry point of `trunkline.families`."""
