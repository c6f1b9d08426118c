"""Prompts of varied length and kind used across engine tests."""

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "List three primary colors:",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\n# compute the mean of an array\n",
    "The quick brown fox",
    "In 1969, the first humans landed on the Moon. The mission was called",
]
