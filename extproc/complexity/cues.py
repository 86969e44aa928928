"""Multilingual cue words for the difficulty features: what a request asks for, in eight languages.

Each group is a list of terms in English, Chinese, Japanese, Korean, Spanish, German, French and
Russian. Terms are matched on the scorer's tokens (lower-cased ASCII words, single non-ASCII
characters), so a Chinese, Japanese or Korean term is a run of characters and a Cyrillic or accented
word is matched by its first four tokens (a stem: "доказ" matches доказать, докажите is not, so both
are listed). English single words also match their plain inflections (-s, -es, -ed, -ing).
The groups are features; the trained weights, not this file, decide what each is worth.
"""

from __future__ import annotations

# fmt: off
CUES: dict[str, list[str]] = {
    # Requests for a proof: the strongest single sign of level 4-5 work.
    "proof": [
        "prove", "proof", "rigorous", "rigorously", "theorem", "lemma", "show that", "qed", "formally prove",
        "证明", "求证", "严格证明", "定理", "引理", "証明", "示せ", "定理", "補題", "증명", "정리", "보조정리",
        "demostrar", "demuestra", "demuestre", "demostración", "teorema", "lema", "prueba que",
        "beweise", "beweisen", "beweis", "zeige dass", "satz", "démontrer", "démontrez", "démontre",
        "montrer que", "montrez que", "preuve", "théorème", "lemme", "доказать", "докажите", "докажи",
        "доказательство", "теорема", "лемма", "покажите что",
    ],
    # Competition / research mathematics vocabulary.
    "hard_math": [
        "olympiad", "imo", "aime", "amc", "putnam", "find all", "positive integers", "integer solutions",
        "diophantine", "modulo", "mod", "prime", "primes", "divisible", "divides", "inequality", "polynomial",
        "combinatorics", "functional equation", "circumcircle", "incircle", "orthocenter", "circumcentre",
        "irrational", "transcendental", "infinitely many", "bijection", "homomorphism", "isomorphism",
        "manifold", "topology", "eigenvalue", "convergence", "asymptotic", "lower bound", "upper bound",
        "整除", "素数", "质数", "正整数", "求所有", "不等式", "多项式", "奥数", "竞赛", "无理数", "无穷多",
        "同构", "收敛", "上界", "下界", "渐近", "整数解", "外接圆", "内切圆", "求めよ", "整数", "無理数",
        "無限に", "多項式", "不等式", "수열", "소수", "정수", "부등식", "다항식", "무한히", "primo", "primos",
        "entero", "enteros", "divisible", "desigualdad", "polinomio", "primzahl", "primzahlen", "ganzzahl",
        "ganze zahlen", "teilbar", "ungleichung", "polynom", "premier", "premiers", "entier", "entiers",
        "inégalité", "polynôme", "простое", "простых", "целых", "делится", "неравенство", "многочлен",
    ],
    "algorithm": [
        "algorithm", "complexity", "dynamic programming", "dp", "graph", "graphs", "shortest path", "np hard",
        "np complete", "recurrence", "time complexity", "greedy", "binary search", "segment tree", "o n",
        "o n log", "o log n", "heap", "trie", "dijkstra", "topological", "memoization", "backtracking",
        "asymptotically", "amortized", "算法", "复杂度", "动态规划", "图论", "最短路", "贪心", "二分", "线段树",
        "时间复杂度", "递推", "アルゴリズム", "計算量", "動的計画法", "最短経路", "알고리즘", "시간 복잡도",
        "동적 계획법", "최단 경로", "algoritmo", "complejidad", "programación dinámica", "algorithmus",
        "komplexität", "laufzeit", "dynamische programmierung", "algorithme", "complexité",
        "programmation dynamique", "алгоритм", "сложность", "динамическое программирование",
    ],
    "distributed": [
        "distributed", "scalable", "scalability", "replication", "replica", "sharding", "shard", "consensus",
        "raft", "paxos", "failover", "fault tolerance", "fault tolerant", "consistency", "latency",
        "throughput", "qps", "rps", "microservice", "microservices", "architecture", "load balancer", "kafka",
        "multi region", "region", "regions", "partition", "partitioning", "idempotent", "exactly once",
        "at least once", "high availability", "availability", "durability", "sla", "p99", "cache invalidation",
        "分布式", "高可用", "高并发", "架构", "一致性", "容错", "分片", "微服务", "延迟", "吞吐", "副本",
        "多活", "幂等", "分散", "可用性", "冗長化", "スケーラブル", "レイテンシ", "スループット", "분산",
        "확장성", "일관성", "가용성", "지연", "처리량", "distribuido", "escalable", "replicación",
        "latencia", "verteilt", "verteilte", "skalierbar", "replikation", "latenz", "distribué",
        "distribuée", "réplication", "latence", "распределённ", "распределенн", "масштабир", "репликац",
        "задержк", "отказоустойчив",
    ],
    # Concurrency, compilers, formal methods, cryptography: level-5 engineering vocabulary.
    "deep_cs": [
        "lock free", "wait free", "linearizable", "linearizability", "concurrent", "concurrency",
        "race condition", "deadlock", "atomic", "atomics", "memory model", "memory ordering", "compiler",
        "interpreter", "type inference", "type checker", "ssa", "llvm", "formal", "formally", "verify",
        "verification", "verified", "coq", "lean", "tla", "isabelle", "invariant", "invariants", "cryptographic",
        "protocol", "zero knowledge", "serializability", "serializable", "snapshot isolation", "crdt",
        "garbage collector", "kernel", "jit", "hazard pointer", "epoch", "cas", "compare and swap",
        "无锁", "并发", "死锁", "竞态", "编译器", "解释器", "形式化", "不变式", "线性化", "原子", "内存模型",
        "协议", "可串行化", "快照隔离", "类型推导", "ロックフリー", "並行", "競合", "コンパイラ",
        "インタプリタ", "形式検証", "不変条件", "락프리", "동시성", "컴파일러", "인터프리터", "불변식",
        "concurrente", "compilador", "intérprete", "nebenläufig", "übersetzer", "invariante",
        "compilateur", "interpréteur", "конкурентн", "компилятор", "интерпретатор", "инвариант",
    ],
    "implement": [
        "implement", "write a", "write an", "build", "create", "code", "function", "class", "program",
        "script", "module", "library", "api", "cli", "command line", "tool", "service", "endpoint",
        "实现", "编写", "写一个", "写个", "代码", "函数", "程序", "脚本", "模块", "实装", "実装", "書いて",
        "コード", "関数", "プログラム", "구현", "작성", "코드", "함수", "프로그램", "implementa", "implementar",
        "escribe", "función", "código", "programa", "implementiere", "implementieren", "schreibe",
        "funktion", "programm", "implémente", "implémenter", "écris", "fonction", "programme", "реализуй",
        "реализуйте", "напишите", "напиши", "функцию", "код", "программу",
    ],
    # Asking for a large, complete or exhaustive output.
    "big_output": [
        "complete", "full", "entire", "end to end", "production ready", "production grade", "comprehensive",
        "detailed", "thorough", "thoroughly", "in depth", "report", "whitepaper", "essay", "every", "all",
        "exhaustive", "step by step", "walk through", "完整", "详细", "全面", "深入", "报告", "论文", "逐步",
        "每一步", "端到端", "完全な", "詳細", "詳しく", "網羅", "完全", "완전한", "상세", "자세히", "전체",
        "completo", "completa", "detallado", "exhaustivo", "vollständig", "vollständige", "ausführlich",
        "detailliert", "complet", "complète", "détaillé", "exhaustif", "полный", "полную", "подробн",
        "детальн",
    ],
    "constraints": [
        "must", "requirement", "requirements", "constraint", "constraints", "ensure", "guarantee",
        "without using", "at most", "at least", "never", "exactly", "should not", "must not", "cannot",
        "no more than", "handle", "edge cases", "edge case", "correctness", "under", "limit", "limits",
        "要求", "必须", "不能", "保证", "至少", "最多", "约束", "限制", "条件", "不得", "需要", "必ず",
        "制約", "要件", "以内", "条件", "保証", "반드시", "요구사항", "제약", "조건", "보장", "debe",
        "requisitos", "restricciones", "garantizar", "muss", "anforderungen", "bedingungen",
        "einschränkungen", "garantieren", "doit", "exigences", "contraintes", "garantir", "должен",
        "должна", "требования", "ограничения", "гарантир",
    ],
    "analysis": [
        "analyze", "analyse", "analysis", "compare", "comparison", "trade off", "tradeoff", "tradeoffs",
        "pros", "cons", "evaluate", "justify", "why", "reason", "reasoning", "derive", "derivation",
        "explain", "assess", "critique", "分析", "比较", "对比", "利弊", "权衡", "评估", "为什么", "解释",
        "推导", "论证", "比較", "説明", "なぜ", "検討", "評価", "導出", "분석", "비교", "설명", "왜", "평가",
        "analiza", "compara", "explica", "por qué", "evalúa", "justifica", "analysiere", "vergleiche",
        "erkläre", "warum", "bewerte", "begründe", "analyse", "analysez", "compare", "explique",
        "expliquez", "pourquoi", "justifie", "проанализируй", "анализ", "сравни", "объясни", "почему",
        "обоснуй",
    ],
    "design": [
        "design", "plan", "strategy", "roadmap", "migration", "migrate", "propose", "proposal", "architect",
        "schema", "component", "设计", "方案", "规划", "计划", "迁移", "策略", "設計", "計画", "移行", "提案",
        "설계", "계획", "전략", "마이그레이션", "diseña", "diseño", "estrategia", "migración", "entwirf",
        "entwerfen", "entwurf", "strategie", "migration", "concevoir", "conçois", "concevez", "stratégie",
        "спроектируй", "спроектировать", "проектир", "стратеги", "миграци",
    ],
    "research": [
        "research", "novel", "hypothesis", "experiment", "experiments", "ablation", "state of the art",
        "open problem", "paper", "benchmark", "methodology", "研究", "新颖", "假设", "实验", "消融", "课题",
        "研究計画", "新規", "仮説", "実験", "연구", "가설", "실험", "investigación", "hipótesis", "experimento",
        "forschung", "hypothese", "experiment", "recherche", "hypothèse", "expérience", "исследован",
        "гипотез", "эксперимент",
    ],
    "expert_domain": [
        "legal", "law", "contract", "liability", "tax", "taxes", "lawsuit", "statute", "diagnosis", "dosage",
        "drug", "clinical", "medical", "patient", "regulation", "regulatory", "compliance", "valuation",
        "irr", "ebitda", "derivative", "portfolio", "hedging", "interaction", "gdpr", "法律", "合同", "劳动",
        "赔偿", "税", "诊断", "药", "临床", "医疗", "合规", "估值", "法规", "契約", "税金", "診断", "薬",
        "法的", "법률", "계약", "세금", "진단", "약물", "contrato", "impuesto", "diagnóstico", "jurídico",
        "rechtlich", "vertrag", "steuer", "diagnose", "juridique", "contrat", "impôt", "diagnostic",
        "юридическ", "договор", "налог", "диагноз",
    ],
    "math_words": [
        "integral", "derivative", "matrix", "probability", "expected value", "variance", "limit", "series",
        "converge", "equation", "solve", "calculate", "compute", "function f", "real numbers", "vector",
        "积分", "导数", "矩阵", "概率", "期望", "方差", "极限", "级数", "方程", "求解", "计算", "確率", "行列",
        "積分", "方程式", "計算", "적분", "행렬", "확률", "방정식", "계산", "matriz", "probabilidad",
        "ecuación", "calcula", "wahrscheinlichkeit", "gleichung", "berechne", "intégrale", "matrice",
        "probabilité", "équation", "calcule", "интеграл", "матриц", "вероятност", "уравнение", "вычисли",
    ],
    "debug": [
        "error", "exception", "traceback", "bug", "crash", "crashes", "fails", "fix", "doesn t work",
        "stack trace", "segfault", "undefined", "null", "broken", "报错", "错误", "异常", "崩溃", "修复",
        "不工作", "エラー", "例外", "バグ", "落ちる", "오류", "에러", "버그", "예외", "error", "falla",
        "excepción", "fehler", "ausnahme", "absturz", "erreur", "plantage", "ошибка", "ошибку", "исключение",
    ],
    "hard_debug": [
        "race", "memory leak", "leak", "leaks", "deadlock", "intermittent", "intermittently", "occasionally",
        "sometimes", "under load", "production", "heisenbug", "corruption", "hangs", "flaky", "oom",
        "偶尔", "内存泄漏", "线上", "生产环境", "偶现", "卡死", "泄漏", "时不时", "偶発", "メモリリーク",
        "本番", "たまに", "가끔", "메모리 누수", "운영", "a veces", "fuga de memoria", "manchmal",
        "speicherleck", "parfois", "fuite mémoire", "fuite de mémoire", "иногда", "утечк",
    ],
    "social": [
        "hi", "hello", "hey", "thanks", "thank", "thx", "bye", "ok", "okay", "cool", "great", "lol",
        "good morning", "good night", "awesome", "perfect", "nice", "你好", "谢谢", "再见", "好的", "在吗",
        "哈哈", "早上好", "晚安", "辛苦", "こんにちは", "ありがとう", "おはよう", "さようなら", "よろしく",
        "안녕", "감사", "고마워", "고맙", "hola", "gracias", "adiós", "buenos días", "hallo", "danke",
        "tschüss", "guten morgen", "bonjour", "merci", "salut", "bonsoir", "привет", "спасибо", "пока",
        "здравствуйте",
    ],
    "lookup": [
        "what is", "what s", "who", "when", "where", "capital", "how many", "define", "definition",
        "meaning", "what does", "which", "是什么", "谁", "哪里", "什么时候", "首都", "多少", "意思", "哪个",
        "何", "誰", "どこ", "いつ", "首都", "意味", "무엇", "누구", "어디", "언제", "수도", "뜻", "qué es",
        "quién", "dónde", "cuándo", "capital", "was ist", "wer", "wo", "wann", "hauptstadt", "qu est ce",
        "qui", "où", "quand", "capitale", "что такое", "кто", "где", "когда", "столица",
    ],
    # Light tasks: translate a line, fix typos, polish, a short summary.
    "light_task": [
        "translate", "translation", "typo", "typos", "grammar", "spelling", "proofread", "polish",
        "rephrase", "rewrite", "shorter", "polite", "title", "headline", "one sentence", "one line",
        "briefly", "short", "simple", "quick", "just", "only", "tl dr", "one liner", "in a sentence",
        "翻译", "错别字", "润色", "改写", "一句话", "简单", "简短", "标题", "就行", "一下", "改成", "翻訳",
        "誤字", "一文", "簡単", "短く", "번역", "오타", "한 문장", "간단", "짧게", "traduce", "traducir",
        "ortografía", "breve", "sencillo", "übersetze", "übersetzen", "tippfehler", "kurz", "einfach",
        "traduis", "traduire", "traduisez", "faute", "fautes", "bref", "simple", "переведи", "перевод",
        "опечатк", "кратко", "просто",
    ],
    "summarise_extract": [
        "summarize", "summarise", "summary", "extract", "json", "bullet", "bullets", "table", "csv",
        "fields", "总结", "概括", "摘要", "提取", "要点", "字段", "要約", "抽出", "まとめ", "요약", "추출",
        "정리", "resume", "resumen", "resumir", "extrae", "zusammenfassung", "fasse", "extrahiere",
        "résume", "résumé", "résumez", "extrais", "суммируй", "извлеки", "перескажи",
    ],
    "multi_step": [
        "first", "then", "finally", "also", "additionally", "each", "step", "steps", "after that", "second",
        "third", "首先", "然后", "最后", "另外", "并且", "每个", "其次", "まず", "次に", "最後", "それぞれ",
        "먼저", "그리고", "마지막", "각각", "primero", "luego", "finalmente", "zuerst", "dann",
        "schließlich", "d abord", "ensuite", "enfin", "сначала", "затем", "наконец",
    ],
    # Units of a requested output size ("a 2,000-word report", "3页"); the number is read separately.
    "size_unit": [
        "words", "word", "pages", "page", "lines", "paragraphs", "字", "文字", "页", "ページ", "단어",
        "페이지", "palabras", "páginas", "wörter", "seiten", "mots", "slov", "слов", "страниц",
    ],
    "sql_data": [
        "sql", "select", "join", "group by", "query", "postgres", "mysql", "index", "pandas", "dataframe",
        "查询", "数据库", "索引", "クエリ", "データベース", "쿼리", "데이터베이스", "consulta",
        "abfrage", "requête", "запрос",
    ],
}
# fmt: on
