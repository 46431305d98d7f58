"""Batch prediction with an exported bundle: files in, ``<stem>_sr.tif`` out (``w2sr predict``).

Modules: ``paths`` (which runtime and precision, with the accuracy guard), ``model`` (a loaded bundle
predicting one plane), ``output`` (the ImageJ TIFF written), ``job`` (one file, never raising for a bad
one), ``batch`` (inputs, outputs, local or dask scheduling, summary).

Python API::

    from w2sr.predict.batch import predict_files

    results = predict_files(bundle, inputs, out_dir, runtime="auto", precision="auto", threads=None,
                            tile=None, batch=1, fmt="float32", overwrite=False, scheduler=None,
                            device="auto")
    # -> list[Result]; Result.status is "written", "skipped" (output exists) or "failed"

What it guarantees:

* Inputs: TIFF (.tif/.tiff), PNG or NPY files, folders (their supported files, not recursive) or
  glob patterns. 2D images and stacks (one extra axis, Z or T) are predicted slice by slice.
  Any size works: images are mirrored up to a size the model accepts and the output cropped;
  images with a side under ``MIN_SIDE`` (8) px are refused as junk.
* Pre/post-processing are the bundle's (``w2sr.core.normalization`` with ``BundleInfo`` numbers); 8/16-bit
  input is cast to float32 first, so an integer image gives the same result as its float copy.
* Each slice goes through ``w2sr.core.tiling.predict_tiled`` with the bundle's halo: memory is the input
  slice, the output slice and one batch of tiles. Stacks are read and written one slice at a time.
* Output: ImageJ TIFF (tifffile ``imagej=True``), float32 in target units, or uint16 with a linear
  scaling ``value = c0 + c1 * pixel`` that is logged and stored as ImageJ's calibration function
  (``cf=0, c0, c1, vunit``: ImageJ shows calibrated values). The pixel size is the input's halved
  (ImageJ unit/resolution, OME PhysicalSize or TIFF resolution); when the input has none, the output
  says 0.5 ``pixel``.
* Written atomically (temp file + rename); an existing output is skipped unless ``overwrite``;
  an input is never written to; an output folder that is also an input folder is refused.
* A bad file gives one line naming it and why; the other files go on. The CLI exits 1 when any
  file failed and lists the failures at the end.
* ``scheduler``: a dask.distributed address; files become tasks, each worker process loads the
  bundle once (cached per process) and writes its outputs atomically into ``out_dir``. The bundle,
  the inputs and ``out_dir`` must be at the same paths on every worker (a shared file system), and
  the workers need this package installed. ``threads`` then applies per worker.
"""
