"""Back-ends that run a model's tiles (torch, ncnn, openvino) and the choice between them; the interface is in
``base``."""
