"""Two small hand-written sets that show the other containers: CSV and an Alpaca-format JSON array."""

from __future__ import annotations

# (prompt, completion): fine-tuning terms, one or two sentences each. Written to glossary.csv.
GLOSSARY: list[tuple[str, str]] = [
    ("What is fine-tuning?", "Training a pre-trained language model further on a small, domain-specific "
     "dataset so it adopts a behaviour, a style or a skill."),
    ("When should I use RAG instead of fine-tuning?", "When the model needs external, up-to-date or "
     "proprietary knowledge: RAG adds it to the input, while fine-tuning changes the weights."),
    ("When is fine-tuning the better choice?", "When you want to change the model's behaviour or style, or "
     "teach it a complex skill that is hard to describe in a prompt, such as writing SQL for your schema."),
    ("What is LoRA?", "Low-Rank Adaptation: the base model is frozen and small low-rank matrices added to "
     "some layers are trained instead, so the result is a small adapter file."),
    ("What is PEFT?", "Parameter-Efficient Fine-Tuning: methods that freeze most of the base model and train "
     "only a small number of added parameters. LoRA is the most popular one."),
    ("What is full fine-tuning?", "Updating every weight of the pre-trained model. It can give the highest "
     "quality but needs far more memory and produces a full-size model per task."),
    ("What is a LoRA adapter?", "The small set of trained LoRA weights saved on its own, often a few "
     "megabytes, that is loaded on top of the base model it was trained with."),
    ("Can I merge a LoRA adapter into the model?", "Yes. Adding the adapter's weight update to the base "
     "weights gives a plain model that runs without the adapter and without extra latency."),
    ("What does the LoRA rank r control?", "The size of the low-rank update: a higher r gives the adapter "
     "more capacity and more parameters to train."),
    ("What is the learning rate?", "How big a step the optimizer takes on each update. Too high and "
     "training diverges; too low and it learns slowly."),
    ("What is an epoch?", "One full pass over the training dataset."),
    ("What is a training step?", "One optimizer update, computed from one batch of examples (possibly "
     "accumulated over several micro-batches)."),
    ("What is catastrophic forgetting?", "A fine-tuned model losing general skills it had before, because "
     "it was trained on a very narrow task."),
    ("How do I detect catastrophic forgetting?", "Evaluate the fine-tuned model on a broad set of tasks, not "
     "only the target task, and compare with the base model."),
    ("How many examples do I need to fine-tune?", "Typically at least a few hundred high-quality examples. "
     "Quality and diversity matter more than raw count."),
    ("What format should fine-tuning data have?", "For instruction tuning, pairs of prompt and completion, "
     "or chat conversations of user and assistant messages."),
    ("Why hold out an evaluation set?", "To measure the model on examples it never trained on; otherwise "
     "the scores overstate how well it generalises."),
    ("What is data leakage between train and eval?", "The same or nearly the same example appearing in both "
     "splits, which makes evaluation look better than real use."),
    ("What is a chat template?", "The tokenizer's rule for turning a list of chat messages into the exact "
     "text the model reads, with its special tokens."),
    ("Why train only on the completion tokens?", "The loss should teach the model to answer, not to "
     "reproduce the user's prompt, so prompt tokens are masked out of the loss."),
    ("Why must the model see the end-of-sequence token in training?", "So it learns when to stop; without "
     "it, a fine-tuned model tends to ramble past its answer."),
    ("What is overfitting?", "The model memorising the training examples instead of learning the pattern: "
     "training loss keeps falling while evaluation loss rises."),
    ("What is gradient accumulation?", "Summing gradients over several micro-batches before one optimizer "
     "step, to train with a larger effective batch than fits in memory."),
    ("Why remove duplicates from a dataset?", "Repeated examples are trained on more often than others, "
     "which skews the model toward them and can leak into the evaluation split."),
]

# (instruction, input, output): rewrite jargon in plain English. Written to plain_english.json.
_PLAIN = "Rewrite the sentence in plain English for a non-technical reader."
_SHORT = "Explain this error message to a user in one sentence, and say what to do."
PLAIN_ENGLISH: list[tuple[str, str, str]] = [
    (_PLAIN, "The deployment was rolled back due to a regression in p99 latency.",
     "We undid the latest update because it made the slowest requests noticeably slower."),
    (_PLAIN, "Our SLA guarantees 99.9% uptime per calendar month.",
     "We promise the service is down for no more than about 43 minutes in any month."),
    (_PLAIN, "The API is rate-limited to 100 requests per minute per token.",
     "Each key can make at most 100 requests a minute; extra requests are refused until the minute passes."),
    (_PLAIN, "Data is encrypted at rest and in transit.",
     "Your data is scrambled both while it is stored and while it travels over the network."),
    (_PLAIN, "The feature is gated behind a flag and will be rolled out incrementally.",
     "The feature is switched off for now and will be turned on for more people step by step."),
    (_PLAIN, "We observed elevated error rates in the eu-west region.",
     "More requests than usual were failing for users served from our western Europe data centre."),
    (_PLAIN, "The invoice is net 30.", "The invoice must be paid within 30 days."),
    (_PLAIN, "The model was fine-tuned with LoRA on 400 support transcripts.",
     "We taught the AI our support style by training a small add-on on 400 past support conversations."),
    (_PLAIN, "This endpoint is deprecated and will be sunset in Q3.",
     "This part of the service is being retired and will stop working between July and September."),
    (_PLAIN, "The backup has an RPO of 15 minutes.",
     "If something goes wrong, at most the last 15 minutes of changes could be lost."),
    (_PLAIN, "Latency is dominated by cold starts.",
     "Most of the waiting happens when the service has to wake up before answering."),
    (_PLAIN, "The cache hit ratio dropped to 40%.",
     "Only 4 in 10 requests could be answered from saved results, so the rest took longer."),
    ("Summarise the text in one sentence.",
     "Fine-tuning takes a pre-trained model and trains it further on a smaller, domain-specific dataset so "
     "it performs better on a particular task or learns a style.",
     "Fine-tuning specialises a pre-trained model by training it a little more on your own data."),
    ("Summarise the text in one sentence.",
     "LoRA freezes the base model and trains small adapter matrices, which cuts memory use and produces a "
     "file of a few megabytes instead of a full copy of the model.",
     "LoRA trains only small add-on weights, so it is cheap and its result is tiny."),
    (_SHORT, "Error 401: Unauthorized",
     "You are not signed in or your key is wrong: sign in again or check the key you are using."),
    (_SHORT, "Error 404: Not Found",
     "The page or item does not exist at that address: check the link for typos."),
    (_SHORT, "Error 429: Too Many Requests",
     "You sent requests too quickly: wait a minute and try again."),
    (_SHORT, "Error 500: Internal Server Error",
     "Something broke on our side, not yours: try again in a few minutes."),
    (_SHORT, "Error 503: Service Unavailable",
     "The service is temporarily down or overloaded: please try again shortly."),
    ("Give a one-word answer: which is larger, a kilobyte or a megabyte?", "", "Megabyte."),
]
