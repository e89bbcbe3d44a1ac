"""The model: checked spec + the data's sizes -> sized model -> torch.fx GraphModule and training plan.
ops/ declares every op (torch-free), sized gives every size a number, lower builds the GraphModule,
plan the layer groups, stages and learning rates, memory what a run may hold."""
