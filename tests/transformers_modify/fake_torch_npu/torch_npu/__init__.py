"""A stand-in for the `torch_npu` package with only `torch_npu.optim.NpuFusedAdamW`, for tests on a CPU.

It registers no `torch.npu`, so transformers, accelerate and DeepSpeed (with `DS_ACCELERATOR=cpu`) see no NPU; only
code that imports `torch_npu.optim` by name, as transformers does for `--optim adamw_torch_npu_fused`, reaches it.
"""
