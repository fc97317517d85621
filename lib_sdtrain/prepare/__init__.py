"""Stage 2 of the pipeline, from captioned images to training-ready data (kohya's formats):

- `lib_sdtrain.dataset.metadata`: caption/tag files -> meta_clean.json (merge, kohya's cleaning rules);
- `buckets`: kohya's aspect-ratio buckets, bucket assignment, resize and centre crop;
- `latents`: the VAE latent cache (meta_lat.json + <stem>.npz); `job.prepare_buckets_latents` runs the whole step;
- `report`: the dataset health report and bucket histogram; `scan`: the shared pass over the images;
- `cli`: `sdtrain merge | buckets | report`.

Nothing heavy is imported here, so `sdtrain --help` stays quick.
"""
