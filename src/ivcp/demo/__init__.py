"""Offline demo material: a tiny random Qwen2-VL and a synthetic motion-direction video data set."""
