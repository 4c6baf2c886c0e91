"""nanopost: the LLM post-training lifecycle in small, readable PyTorch (see README.md)."""
