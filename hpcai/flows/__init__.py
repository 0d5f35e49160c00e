"""What the commands do, with no typer and no rich: submit (plan + execute), runs, staging, job environment,
onboarding, budget."""
