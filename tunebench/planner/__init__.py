"""`tunebench plan`: predict each method's peak memory and step time for a GPU budget, and recommend one.

It plans the run `tunebench train` would launch with the same config (inputs.planned_run): each method's config
through the same layering, and from it what changes one training step (inputs.HONOURED).

Memory comes from tracing one real training step of the actual model, method, optimizer and precision under
FakeTensorMode (tracing), counted by the harness's own TensorTracker; FLOPs from the same trace. The device adds
constants per GPU (configs/planner/gpus.yaml): device bytes = tensor peak x (1 + allocator margin) + CUDA context.
Time = FLOPs / (peak FLOP/s x MFU). Validation (validate) runs real steps on this machine and sets prediction
against measurement.

request (PlanRequest: every option) -> inputs (model, GPU, the run's config) -> tracing (one fake step) ->
extrapolate (other batches, lengths, depths) -> sharding (per GPU) -> limits (what fits, traced over forked
processes) -> predict (the plan) -> render (its text).
"""
