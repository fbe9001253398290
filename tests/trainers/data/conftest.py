from tests.trainers.data.imagefolder import jpeg_folder  # noqa: F401  (the session fixture)
