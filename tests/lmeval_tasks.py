"""lm-eval task YAML templates the tests write into a folder of their own (``include_path``):
every task local, its data a JSONL file, nothing fetched."""

# multiple choice: format with name= and data= (a JSONL of prompt, sep, choices, label rows)
MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
num_fewshot: 0
doc_to_text: "{{{{prompt}}}}{{{{sep}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
