"""Reading waimai_10k, the original recipe's prompt, encoding and training batches."""
