"""Task forecast: one or many series from a CSV, windows of input_len steps -> the next horizon
steps, anchored on a seasonal naive; panels, calendar inputs, quantiles and the forecasters'
metrics (MAE, RMSE, sMAPE, MASE) next to every seasonal naive."""
