"""Per-task pieces of training: the loss, validation metrics, and batch sizes for throughput.
Entity F1 is seqeval's; the embedding loss is written here (see ``contrastive_loss``)."""

from __future__ import annotations

import math

from nexa_core.enums import Task


def evaluate(task: Task, model, eval_loader, accelerator, label_names: list[str]) -> dict[str, float]:
    """Validation metrics per task, gathered over every rank: eval_loss, and entity F1 (NER, seqeval),
    accuracy (classification), in-batch top-1 retrieval (embedding) or perplexity (causal LM)."""
    import torch

    model.eval()
    losses, preds, refs, hits, total = [], [], [], 0, 0
    with torch.no_grad():
        for batch in eval_loader:
            if task is Task.EMBEDDING:
                a, p = embed_pair(model, batch)
                sims = a @ p.T
                hits += int((sims.argmax(dim=1) == torch.arange(len(a), device=a.device)).sum())
                total += len(a)
                continue
            out = model(**batch)
            losses.append(accelerator.gather(out.loss.detach()).float().mean().item())
            if task in (Task.NER, Task.CLASSIFICATION):
                logits, labels = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"]))
                preds.append(logits.cpu())
                refs.append(labels.cpu())
    model.train()
    result: dict[str, float] = {}
    if losses:
        result["eval_loss"] = sum(losses) / len(losses)
    if task is Task.NER:
        result["f1"] = seqeval_f1(preds, refs, label_names)
    elif task is Task.CLASSIFICATION:
        correct = sum(int((p == r).sum()) for p, r in zip(preds, refs))
        result["accuracy"] = correct / max(1, sum(len(r) for r in refs))
    elif task is Task.EMBEDDING:
        result["accuracy"] = hits / max(total, 1)  # in-batch retrieval top-1
    elif task is Task.CAUSAL_LM and losses:
        result["eval_perplexity"] = math.exp(min(result["eval_loss"], 50))
    return result


def loss(task: Task, model, batch):
    """The training loss: the model's own (token/sequence classification, causal LM), or the in-batch
    contrastive loss for embedding."""
    if task is Task.EMBEDDING:
        return contrastive_loss(model, batch)
    return model(**batch).loss


def batch_size(batch) -> int:
    for key in ("input_ids", "anchor_input_ids"):
        if key in batch:
            return int(batch[key].shape[0])
    return 0


def token_count(batch) -> int:
    total = 0
    for key in ("attention_mask", "anchor_attention_mask", "positive_attention_mask"):
        if key in batch:
            total += int(batch[key].sum())
    return total


def mean_pool(model, ids, mask):
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def embed_pair(model, batch):
    import torch.nn.functional as F

    a = mean_pool(model, batch["anchor_input_ids"], batch["anchor_attention_mask"])
    p = mean_pool(model, batch["positive_input_ids"], batch["positive_attention_mask"])
    return F.normalize(a, dim=-1), F.normalize(p, dim=-1)


def contrastive_loss(model, batch, scale: float = 20.0):
    """In-batch negatives (sentence-transformers' MultipleNegativesRankingLoss: cosine × 20, cross
    entropy against the diagonal). Written here because that loss wraps a SentenceTransformer,
    while DeepSpeed must wrap the raw transformers encoder."""
    import torch
    import torch.nn.functional as F

    a, p = embed_pair(model, batch)
    scores = a @ p.T * scale
    return F.cross_entropy(scores, torch.arange(len(a), device=scores.device))


def seqeval_f1(preds, refs, label_names: list[str]) -> float:
    from seqeval.metrics import f1_score

    true_seqs, pred_seqs = [], []
    for p_batch, r_batch in zip(preds, refs):
        for p_row, r_row in zip(p_batch.tolist(), r_batch.tolist()):
            keep = [(p, r) for p, r in zip(p_row, r_row) if r != -100]
            true_seqs.append([label_names[r] for _, r in keep])
            pred_seqs.append([label_names[p] if 0 <= p < len(label_names) else "O" for p, _ in keep])
    return float(f1_score(true_seqs, pred_seqs)) if true_seqs else 0.0
