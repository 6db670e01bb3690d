"""How much of one untrusted file pixelsift will take: the defaults of the ``settings`` resource.

Kept free of Dagster so the worker processes that hash and decode files can use them too.
"""

# Every worker holds at most one file in memory, so this times the worker count (up to 16)
# bounds what reading a batch can take. 512 MiB is far above any photo or scan.
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit
