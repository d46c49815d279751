"""Record keys that both sides of the wire use, defined once (Flower's pattern of sharing
``KEY_CLIPPING_NORM`` between a strategy wrapper and its client mod).

Keys that belong to one method are defined in that method's module
(`fedprivacy.methods`); the ones here belong to the framework's own protocol.
"""

ARRAYS = "arrays"  # the model's weights (ArrayRecord)
# array of the server's arrays (model.adapter): flat ids (layer * d_ff + index) of the FFN
# neurons zeroed in the frozen base (`fedprivacy.adapters.load_wire` applies them)
BASE_EDITS = "base-edits"
METRICS = "metrics"  # a reply's MetricRecord
CONFIG = "config"  # a message's ConfigRecord
TASK = "task"  # a query reply's ConfigRecord: the task's public description

NUM_EXAMPLES = "num-examples"  # reply metric: records behind the reply (aggregation weight)
PARTITION_ID = "partition-id"  # reply metric: which client answered
SECONDS = "seconds"  # reply metric: the client's wall time for the message
BYTES_DOWN = "bytes_down"  # reply metric: array bytes the message brought (server -> client)
BYTES_UP = "bytes_up"  # train-reply metric: array bytes the reply carries (client -> server)
SERVER_ROUND = "server-round"  # message config: the round (FedAvg writes it)
NUM_ROUNDS = "num-rounds"  # message config: the run's planned rounds
DEADLINE = "deadline"  # message config: wall-clock time (UNIX s) the client must reply by
# train config: evaluate the received global model first, in the same message (one ClientApp
# start per round in a deployment); the train reply then carries its EVALUATION MetricRecord
EVALUATE_FIRST = "evaluate-first"
EVALUATION = "evaluation"

CLIENT_SCORES = "client-scores"  # train config: also score the client's own model after training
SCORE = "val_score"  # reply metric: the client model's validation score (higher is better)
TEST_SCORE = "test_score"  # reply metric: the client model's test-split score
