"""Where rationale records come from: teacher generation, offline sources, synthetic problems, compression."""
