"""Where the cache keeps blobs, manifests and tags: an asynchronous seam and its backends."""
