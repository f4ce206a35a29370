"""Converters from public dataset layouts to the IVCP (LLaMA-Factory sharegpt + action_label) format."""
