"""Peak CUDA memory of training steps, simulated on a CPU-only torch build with fake CUDA tensors.

Load the fake CUDA runtime before torch (`scripts/simulate_memory.py` does): `shim.load_fake_cuda()`.
"""
