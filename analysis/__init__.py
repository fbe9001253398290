"""normstudy analysis: the stability report read back from MLflow."""
