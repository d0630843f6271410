"""LivePortrait's networks, one per module: F (:mod:`.appearance_extractor`), M (:mod:`.motion_extractor`),
W (:mod:`.warping_network` with :mod:`.dense_motion`), G (:mod:`.spade_decoder`), the stitching and retargeting
MLPs (:mod:`.stitching`); the blocks they share in :mod:`.blocks`, and the five together in :mod:`.networks`."""
