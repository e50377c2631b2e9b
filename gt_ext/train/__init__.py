"""Training core: config, data, losses, LoRA adapters and the single-process loop.

    config.py  TrainConfig / load_config(path, overrides)
    data.py    load_items, BatchLoader (packed, seeded, resumable), fixed_batches, collate
    losses.py  sft_loss_sum, sequence_logps, reference_logps, dpo_loss, dpo_batch_loss
    lora.py    load_base_for_training, add_lora, apply_role_adapter, save_adapter
    loop.py    Trainer: AdamW + warmup/cosine, accumulation, clipping, checkpoints, exact resume
    checkpoint.py  the one checkpoint format (adapter + trainer.pt, weights-only load, RNG restored)
    runfolder.py   run.json, metrics.jsonl, loss.png: what every trainer writes
"""
