"""The training core every training stage (align, pretrain, sft) shares."""
