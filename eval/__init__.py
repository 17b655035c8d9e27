"""nexuskv quality evaluation: SmolLM2-135M-Instruct on real ShareGPT dialogues, every nexuskv
method and NVIDIA kvpress presses side by side. Entry point: python -m eval.run (see docs/quality.md).
"""
