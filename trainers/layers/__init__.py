"""Layers shared by several models, one module per family: `masked_conv`, `lstm_scan`,
`shifted_conv`, `gated_resnet` (PixelCNN++'s), `encoder_decoder`, `heads`."""
