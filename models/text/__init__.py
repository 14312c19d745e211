"""The text family: all-MiniLM-L6-v2 made task-routed (LoRA over the frozen pretrained base,
slimmable by depth and width, task experts in its upper layers), registered as the `text` entry
point of `trunkline.families` (its adapter: `models.text.adapter.TextAdapter`)."""
