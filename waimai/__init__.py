"""Shared code of the waimai_10k Baichuan2 fine-tuning scripts (one job per module)."""
