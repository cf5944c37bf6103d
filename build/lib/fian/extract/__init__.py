"""Video feature extraction: PyAV decoding, C3D (Sports-1M) and I3D (RGB) backbones."""
