"""Bytes and pixels in and out: image decoding and encoding, atomic file writes, the I/O
pipeline of batch commands and the allocator setting. Knows nothing of models or GQ."""
