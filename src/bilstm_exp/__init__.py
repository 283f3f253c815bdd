"""bilstm-exp: tracked, reproducible bidirectional-LSTM text-classification experiments."""

__version__ = "0.1.0"
