"""The top: the CLI, the nightly task functions, the embedded Airflow state and the demo."""
