"""The stages of a round, one module each, in round order:

    curate.py         sources -> prompts (quarantine, filters, dedup, decontamination, mixture)
    generate.py       prompts -> completions (vLLM, from the policy and any committee models)
    score.py          completions -> scores (verifiers, reward models, LLM judges, combined)
    select.py         scores -> best-of-N SFT rows and DPO pairs (plus replayed rows of earlier rounds)
    train_reward.py   pairs -> a reward model for the next rounds (optional)
    train.py          SFT, then DPO, from the policy -> the trained model
    train_rl.py       trained model + prompts -> GRPO on the verifiable rewards (optional)
    average.py        trained model + earlier policies -> the candidate (optional)
    evaluate.py       policy and candidate -> held-out metrics, with 95 % intervals
    compare.py        judge win rate of the candidate against the policy (win_rate eval sets only)
    promote.py        the gate: promote the candidate, or keep the policy, with the reason

stage.py is the one mechanism every stage runs through; run_alone.py runs one stage by itself. The
library code the stages use lives in curation/, generation/, scoring/ and selection/.
"""
