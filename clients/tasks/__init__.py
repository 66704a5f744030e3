"""Tasks shipped with fedguard, each an ordinary `clients.task.Task`.

- `clients.tasks.digits:task`, `clients.tasks.breast_cancer:task`: bundled demo datasets
- `clients.tasks.tabular:task`: the no-code task for nodes holding CSV or Parquet files
"""
