"""What a run did, for people: `run_summary.json`, the HTML report and its model cards.

`runs` reads pipeline runs from ML Metadata; `run_summary` builds the summary
the CLI prints and writes; `report_data` gathers everything the report shows,
`eval_predictions` re-runs the model over the eval split for it, `html` renders
the page and `report` writes it with the model cards.
"""
