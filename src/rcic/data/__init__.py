"""The dataset: metadata and plate rules, images and the packed store, single cells and
segmentation, and the profile table format."""
