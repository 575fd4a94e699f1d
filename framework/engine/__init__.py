"""The training loop: Settings from the config, Run (one training job), callbacks, fused multi-step kernels,
threading of wide steps, metrics, and a hook that stubs a step's kernels for timing the loop (stubs)."""
