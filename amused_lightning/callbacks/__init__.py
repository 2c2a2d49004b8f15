"""Cross-cutting concerns of a fit, as Lightning callbacks: EMA, placement of frozen weights, the non-finite guard,
preemption, the validation images and the final export."""
