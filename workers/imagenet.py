"""ImageNet's per-channel mean and standard deviation on [0, 1] RGB: the normalisation every backbone here
was trained with (XMem, TMO, the EfficientNet-Lite trunks), so every model's preprocessing reads it here."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
