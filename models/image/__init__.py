"""The image family: MNIST-Scenes-style task-routed vision transformers (a conv stem and a
transformer trunk over one-channel images), registered as the `image` entry point of
`trunkline.families` (its adapter: `models.image.adapter.ImageAdapter`)."""
