"""The keyword classifier: weighted patterns per task type, no model needed."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from modelyard.state import Classification, TaskType

T = TaskType


@dataclass(frozen=True)
class _Rule:
    task_type: TaskType
    pattern: re.Pattern[str]
    weight: float


def _rules(task_type: TaskType, weighted: dict[str, float]) -> list[_Rule]:
    # Prompts are lower-cased once before matching: much faster than re.IGNORECASE.
    return [_Rule(task_type, re.compile(p), w) for p, w in weighted.items()]


RULES: list[_Rule] = [
    *_rules(
        T.PLANNING,
        {
            r"\bplan(s|ning)?\b(?! to)": 2.0,
            r"\b(roadmap|milestones?|phases?|rollout|rollback points?)\b": 1.5,
            r"\b(architecture|architect)\b": 1.5,
            r"\bdesign (a|an|the|our|my)?\s*\w*\s*(system|service|schema|api|architecture)": 2.0,
            r"\b(migration|adoption|testing|release|branching|scaling) (strategy|plan|process)": 2.5,
            r"\bstrateg(y|ies)\b": 1.0,
            r"\bhow (should|would|do) (i|we) (structure|organi[sz]e|approach|architect|split)": 2.5,
            r"\b(what|which) steps\b|\bsteps (to|for)\b|\bstep[- ]by[- ]step\b": 1.5,
            r"\b(outline|break (it|this|that|the work) down|break down|high[- ]level|sequence it)\b": 1.5,
            r"\b(trade-?offs?|pros and cons)\b": 0.8,
            r"\b(not|no|before)\b[^.?!]{0,40}\b(any )?(code|coding)\b": 2.0,
        },
    ),
    *_rules(
        T.CODE_GENERATION,
        {
            r"\b(write|generate|create|build|implement|code up|give me)\b[^.?!]{0,40}\b"
            r"(function|class|script|program|method|module|test|tests|query|regex|endpoint|"
            r"component|hook|decorator|dockerfile|makefile|cli|parser|struct|macro)\b": 3.0,
            r"\bimplement(ation)?\b": 1.5,
            r"\b(rewrite|refactor|port|convert|translate|turn|migrate)\b[^.?!]{0,50}\b"
            r"(to|into|in|so|using)\b": 2.5,
            r"\badd (a |an )?(method|function|endpoint|test|flag|option|field|column)\b": 2.5,
            r"\b(unit tests?|test cases?|type hints|docstrings)\b": 1.0,
            r"\bin (python|rust|go|java|javascript|typescript|c\+\+|c#|kotlin|swift|sql|bash)\b": 0.8,
            r"^\s*(python|rust|go|java|javascript|typescript|swift|kotlin|sql|bash)\s*:": 2.0,
            r"\b(script|query|dockerfile|workflow|playbook|middleware|helm chart|terraform "
            r"module|function|snippet|one-liner|regex|sql|migration file|crate)\b": 1.0,
            r"^\s*(i need|give me|make|create|build|write|escr[ií]beme|preciso)\b": 1.5,
        },
    ),
    *_rules(
        T.CODE_REVIEW,
        {
            r"\b(review|critique|code review|audit)\b": 3.0,
            r"\bis (this|my|the) (code|function|class|query|implementation|approach|pr|"
            r"migration|config)?\s*(ok|okay|fine|good|correct|safe|reasonable|idiomatic)": 3.0,
            r"\b(anything|something) (wrong|risky|off|missing)\b": 2.5,
            r"\bany (issues|problems|bugs|concerns|red flags|smells)\b": 2.5,
            r"\b(feedback on|second pair of eyes|look over|sanity[- ]check|bite me)\b": 2.5,
            r"\b(security (holes|issues)|code smells?|maintainab|readab)": 1.5,
            r"\bwhat('s| is) wrong with (this|my) (pr|code|diff|approach|design)\b": 2.0,
            r"\bam i missing\b": 1.5,
        },
    ),
    *_rules(
        T.PROBLEM_SOLVING,
        {
            r"\b(error|exception|traceback|stack ?trace|segfault|panic|errno)\b": 2.0,
            r"\b(fails?|failing|failed|crash(es|ing)?|hangs?|broken|doesn'?t work|"
            r"not working|keeps? (getting|throwing))\b": 2.0,
            r"\b(debug|diagnos|fix|troubleshoot|root cause)": 1.5,
            r"\bwhy (does|is|do|am|are)\b[^?]{0,80}\b(fail|crash|slow|hang|return|"
            r"throw|leak|wrong|timeout|time out)": 2.0,
            r"\b(how many|find the|solve|prove|minimum number|maximum number|probability|"
            r"equation|puzzle|shortest|optimal)\b": 2.5,
            r"\b(fastest|efficient|quickest) way to\b": 2.0,
            r"\b(\d+\s*[\^*/+-]\s*\d+|[a-z]\s*=\s*\d|x\^|\bmod\b)": 1.0,
            r"\b(slow|latency|memory leak|out ?of ?memory|deadlock|race condition)\b": 1.2,
        },
    ),
    *_rules(
        T.EXPLANATION,
        {
            r"\bexplain|\beli5\b": 3.0,
            r"\bwhat('s| is| are) (a |an |the )?(point|purpose|difference|meaning|idea)\b": 2.5,
            r"\bdifference between\b|\bvs\.?\b|\bversus\b": 1.5,
            r"\bhow (does|do|is|are)\b[^?]{0,60}\b(work|works|implemented|handled|differ)\b": 2.5,
            r"\bwhat (is|are|does) \w+": 1.5,
            r"\bhow (does|do)\b": 1.5,
            r"\bexplic|\bunder the hood\b|\bwhy (does|do|is|can'?t)\b": 1.2,
            r"\bwhy (do|would|does) (people|we|anyone|you)\b": 1.8,
            r"\b(in plain terms|intuition|understand|walk me through|teach me|"
            r"help me understand)\b": 2.0,
            r"\bwhen (should|would) (i|you|we) use\b": 1.5,
        },
    ),
    *_rules(
        T.GENERAL,
        {
            r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening))\b": 3.0,
            r"\b(email|letter|poem|story|joke|recipe|essay|cover letter|toast|speech|"
            r"haiku|limerick|slogan)\b": 2.0,
            r"\b(trip|travel|vacation|holiday|itinerary|restaurant|cook|bake|recipe|wedding|"
            r"birthday|party|garden|workout|diet)\b": 2.0,
            r"\b(history|capital of|president|war|novel|movie|film|song)\b": 1.2,
        },
    ),
]

#: Words that tie a prompt to software, computing or maths; without one, it is general.
DOMAIN = re.compile(
    r"```|\b(code|coding|function|class|method|script|program|python|java|javascript|"
    r"typescript|rust|golang|go|c\+\+|c#|sql|api|apis|database|db|server|backend|frontend|"
    r"bug|algorithm|compile|compiler|deploy|regex|http|linux|bash|shell|css|html|react|vue|"
    r"django|rails|node|kubernetes|docker|git|repo|pr|commit|test|tests|library|package|"
    r"module|framework|app|service|microservices?|query|index|cache|thread|async|memory|"
    r"cpu|integer|array|list|string|equation|prove|theorem|probability|math|matrix|graph|"
    r"binary|hash|tcp|dns|cloud|aws|terraform|schema|json|yaml|stack|heap|runtime|"
    r"variable|loop|recursion|pointer|null|exception|error|crash|data|protocol|network|"
    r"encryption|auth|oauth|jwt|sso|cli|terminal|os|kernel|model|llm|neural|postgres\w*|"
    r"mysql|sqlite|mongo\w*|redis|kafka|queue|vm|crontab|cron|jenkins|github|gitlab|ci|"
    r"pipeline|endpoints?|microservice|monolith|migrations?|repos|sdk|events|latency|"
    r"webhooks?|orm|rest|graphql|frontend|ui|ios|android|mobile|browser|typescript|"
    r"numbers?|sum|prime|digits?|integers?|sequence|primary key|table|rows|columns|"
    r"devops|infra\w*|container|serverless|lambda|tenant\w*|billing engine|module|"
    r"refactor\w*|codebase|software|engineer\w*|developer|programming|compute|computer|"
    r"\d+\s*[\^*/+=-]\s*\d+|[a-z_]+\(\))\b|[{};]\s*$|=>|->|::",
    re.MULTILINE,
)
_CODE_BLOCK = re.compile(r"```|^( {4}|\t)\S|[;{}]\s*$", re.MULTILINE)


def keyword_scores(prompt: str) -> dict[TaskType, float]:
    """Return each task type's keyword score for a prompt (later matches weigh more)."""
    return dict(zip(TaskType, _scores(prompt), strict=True))


@functools.lru_cache(maxsize=256)
def _scores(prompt: str) -> tuple[float, ...]:
    # Cached: the hybrid classifier scores a prompt twice (its keyword step, then as
    # features of the embedding classifier).
    scores = dict.fromkeys(TaskType, 0.0)
    prompt = prompt.lower()
    length = max(len(prompt), 1)
    for rule in RULES:
        for match in rule.pattern.finditer(prompt):
            # "Explain X and then write Y" wants Y: a later match weighs up to 50% more.
            scores[rule.task_type] += rule.weight * (1.0 + 0.5 * match.start() / length)
    in_domain = bool(DOMAIN.search(prompt))
    if not in_domain:
        for task_type in TaskType:
            if task_type is not T.GENERAL:
                scores[task_type] *= 0.25
        scores[T.GENERAL] += 2.0
    has_code = bool(_CODE_BLOCK.search(prompt))
    if has_code and scores[T.CODE_REVIEW] == 0 and scores[T.CODE_GENERATION] == 0:
        scores[T.PROBLEM_SOLVING] += 0.5
    return tuple(scores[t] for t in TaskType)


def forget_keyword_scores() -> None:
    """Empty the cache of recent prompts' scores (benchmarks time a prompt's first scoring)."""
    _scores.cache_clear()


def classify_by_keywords(prompt: str) -> Classification:
    """Return the task type the prompt's words point to, with a confidence.

    The confidence is a softmax over the scores, so it is high only when one task type
    clearly beats the others; a prompt with no signal is `general` at low confidence.
    """
    scores = keyword_scores(prompt)
    best = max(TaskType, key=lambda t: (scores[t], t is T.GENERAL))
    if scores[best] <= 0.0:
        return Classification(task_type=T.GENERAL, confidence=0.3, method="keyword", scores=scores)
    exps = {t: math.exp(min(s, 50.0)) for t, s in scores.items()}
    confidence = exps[best] / sum(exps.values())
    return Classification(
        task_type=best, confidence=round(confidence, 4), method="keyword", scores=scores
    )
