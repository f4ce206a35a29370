"""``ivcp classify`` over many videos: input listing, sharding across processes and machines, resumable output, Ray."""
