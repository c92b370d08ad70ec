"""Back-ends that run a model's tiles (torch, ncnn) and the choice between them; the interface is in ``base``."""
