"""Looking at trained models and runs: the arrays behind the figures, the
figures, --mode=visualize, the results report, training curves and the
model summary.
"""
