"""Photos in, arrays out: dataset sources, download, decoding, the manifest, validation
(Great Expectations + quarantine), the frozen test split and preprocessing to `.npy`."""
