"""
lm-evaluation-harness on any model nanoCPM loads: a run's out_dir, a DCP checkpoint, a released MiniCPM directory.
The paper scores its models on the usual benchmarks (§6: MMLU, GSM8K, ARC, HellaSwag ...); the field runs them with
lm-eval (the optional package `lm-eval`, 0.4.x).

    python eval.py --out_dir=out --lm_eval=hellaswag,arc_easy          # the harness's tasks (they download data)
    python eval.py --model_dir=MiniCPM-1B-sft-bf16 --lm_eval=mmlu,gsm8k,arc_challenge,hellaswag
    python eval.py --out_dir=out --lm_eval=my_task --lm_eval_include=tasks/   # a task of your own, a local YAML

The model is wrapped for lm-eval's Python API (its TemplateLM): log-likelihoods of continuations, rolling
log-likelihoods and greedy generation, with lm-eval's own tokenization rules, so no export is needed. Its scores
equal lm-eval's `hf` model on the Llama export of the same model (tests/test_eval.py).
"""

import torch
import torch.nn.functional as F

from tokenizer import decode_ids


def harness_model(model, enc, batch_size=16):
    """An lm-eval model (a TemplateLM) of a MiniCPM and its tokenizer (a tiktoken-like encoding); ImportError in one
    line without lm-eval."""
    try:
        from lm_eval import utils  # optional
        from lm_eval.api.model import TemplateLM
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    except ImportError:
        raise ImportError("--lm_eval needs the optional package: pip install 'lm-eval>=0.4,<0.5'") from None
    device = next(model.parameters()).device
    max_length = model.config.max_position_embeddings

    class NanoLM(TemplateLM):
        @property
        def eot_token_id(self):
            return enc.eot_token

        @property
        def prefix_token_id(self):  # what an empty context is conditioned on: <s> where the tokenizer has one
            return getattr(enc, "bos_token", None) if getattr(enc, "bos_token", None) is not None else enc.eot_token

        @property
        def max_length(self):
            return max_length

        def tok_encode(self, string, **kwargs):
            return enc.encode_ordinary(string)

        @torch.no_grad()
        def _loglikelihood_tokens(self, requests, disable_tqdm=False):
            """(sum of log p(continuation | context), whether greedy decoding gives it) per request, each row the
            last max_length + 1 tokens of context + continuation, as lm-eval's hf model scores them."""
            out = []
            for i in range(0, len(requests), batch_size):
                chunk = requests[i:i + batch_size]
                rows = [(ctx + cont)[-(max_length + 1):][:-1] for _, ctx, cont in chunk]
                width = max(len(r) for r in rows)
                x = torch.full((len(rows), width), enc.eot_token, dtype=torch.long)
                for j, r in enumerate(rows):
                    x[j, :len(r)] = torch.tensor(r)
                logp = F.log_softmax(model(x.to(device))[0].float(), dim=-1)
                for j, ((_, _, cont), r) in enumerate(zip(chunk, rows)):
                    tail = logp[j, len(r) - len(cont):len(r)]
                    target = torch.tensor(cont, device=device)
                    greedy = bool((tail.argmax(-1) == target).all())
                    out.append((float(tail.gather(1, target[:, None]).sum()), greedy))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            """The log-likelihood of whole documents, in disjoint windows of max_length tokens (lm-eval's rule)."""
            out = []
            for (string,) in (r.args for r in requests):
                windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=max_length,
                    context_len=1))
                out.append(sum(ll for ll, _ in self._loglikelihood_tokens([(None,) + w for w in windows])))
            return out

        @torch.no_grad()
        def generate_until(self, requests, disable_tqdm=False):
            """Greedy continuations, cut at the request's stop strings (and the end-of-text token)."""
            eos = decode_ids(enc, [enc.eot_token])
            out = []
            for context, gen_kwargs in (r.args for r in requests):
                kwargs = normalize_gen_kwargs(gen_kwargs, 256)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                n = kwargs.pop("max_gen_toks")
                ids = self.tok_encode(context)[-(max_length - n):]
                x = torch.tensor([ids], device=device)
                y = model.generate(x, n, temperature=0, eos_token_id=enc.eot_token)[0, len(ids):].tolist()
                out.append(postprocess_generated_text(generation=decode_ids(enc, y), stop=until, think_end_token=None))
            return out

    return NanoLM()


def run_tasks(model, enc, tasks, include=None, limit=None, batch_size=16):
    """{task: {metric: value}} of lm-eval's tasks (names, comma-separated) on the model; `include`: a directory of
    task YAML files of your own."""
    from lm_eval import simple_evaluate  # optional (harness_model says how to install it)
    from lm_eval.tasks import TaskManager
    lm = harness_model(model, enc, batch_size)
    results = simple_evaluate(model=lm, tasks=[t for t in tasks.split(",") if t], limit=limit,
                              task_manager=TaskManager(include_path=include) if include else None)
    return {task: {k: v for k, v in scores.items() if isinstance(v, (int, float)) and k != "alias"}
            for task, scores in results["results"].items()}
