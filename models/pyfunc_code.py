"""The registered model's code, as MLflow logs it (models from code): every version holds a copy of
this file, and MLflow runs it on each load (`mlflow.pyfunc.load_model`, `mlflow models serve`) to get
the pyfunc, models.pyfunc.BuyIntentModel, which reads its state from the version's artifacts. No
pickled Python object is stored or unpickled. Nothing in the project imports this file."""

import mlflow.models

from clickstream.models.pyfunc import BuyIntentModel

mlflow.models.set_model(BuyIntentModel())
