"""normstudy: the study driver (spec, runner, MLflow tracking, CLI)."""
