"""Datasets (GTA5, SYNTHIA, Cityscapes, the embedded MiniCity benchmark), transforms, sampling."""
