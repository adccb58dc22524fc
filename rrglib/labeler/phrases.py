"""Phrase data of the rule-based labeler: what mentions each observation, what looks like a
mention but is not, fixed normal / uncertain assertions, and the negation / uncertainty triggers;
and the tables of ``agreement``: IU X-Ray MeSH tags -> observations, the naive baseline's keywords.

The phrases are regular-expression fragments written as readable phrases (one space between
words; they are matched against normalised text, see ``engine.normalise``). The SynthCXR report
grammar (data_prep/synthcxr.py) writes its sentences so that this labeler reads its labels back
exactly; change both together.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Anchors and qualifiers: attributes that are neither normal nor abnormal until qualified.
# ---------------------------------------------------------------------------------------------
HEART = (
    r"(?:heart size|heart|cardiac silhouette|cardiac size|cardiac shadow|cardiac contours?"
    r"|heart shadow|size of the heart|cardiac and mediastinal (?:contours?|silhouettes?))"
)
MEDIASTINUM = (
    r"(?:cardiomediastinal (?:silhouettes?|contours?|structures|size|shadow)"
    r"|(?:heart and )?mediastinal (?:contours?|silhouettes?|structures|width)"
    r"|mediastinum|superior mediastinum|mediastinal and hilar contours)"
)
VASCULATURE = (
    r"(?:(?:central |pulmonary |lung |central pulmonary )?(?:vascularity|vasculature|vascular markings)"
    r"|pulmonary vessels)"
)
COSTOPHRENIC = r"(?:costophrenic angles?|costophrenic sulci|costophrenic recesses)"
PLEURAL_SPACES = r"(?:pleural spaces?)"

# "Upper limits of normal", "top normal" say the size is still within the normal range: normal
# (IU's indexers never tag them as cardiomegaly). "Borderline" is CheXpert's example of an
# uncertain finding and stays uncertain.
_NORMAL_Q = (
    r"(?:(?<!limits of )(?<!limit of )(?<!top )(?<!high )(?<!not )normal(?: in size| size)?"
    r"|within (?:the )?(?:normal limits|limits of normal)|unremarkable|not enlarged|wnl"
    r"|(?:(?:near|at|on|towards?) )?(?:the )?(?:upper limits? (?:of )?normal|top (?:of )?normal"
    r"|high normal)(?: limits)?(?: in size| size| for size)?)"
)
_BORDERLINE_Q = r"(?:borderline(?: enlarged| in size)?|mildly prominent|prominent)"
_ENLARGED_Q = r"(?:enlarged|enlargement|increased in size|large|widened|widening)"
_CLEAR_Q = r"(?:clear|sharp|preserved|normal|free)"

# A short stretch of words between an anchor and its qualifier. It may not cross a qualifier of
# another kind or a clause terminator, so "heart is enlarged and lungs are normal" stays apart.
_GAP_STOP = (
    r"(?:but|however|although|though|whereas|while|with|secondary|due|enlarg\w*|normal|unremarkable|borderline"
    r"|prominent|widen\w*|large|upper|top|lungs?)\b"
)
GAP = rf"(?:,?\s(?!{_GAP_STOP})[\w']+){{0,5}}?,?\s"
# "<qualifier> <anchor>": at most two words, none of which starts a new clause, so "the heart is
# normal in size and the mediastinum is widened" does not read as a normal mediastinum.
SHORT_GAP = r"(?:\s(?!and|but|with|or|while|whereas)[\w']+){0,2}?\s"


def _anchored(anchor: str, qualifier: str) -> list[str]:
    """Both word orders: "<anchor> ... <qualifier>" and "<qualifier> <anchor>". The gap is a
    capturing group: the engine masks anchor and qualifier only, so a finding named inside the
    gap ("heart size and pulmonary vascular engorgement are within normal limits") is still read."""
    return [rf"{anchor}({GAP}){qualifier}", rf"{qualifier}({SHORT_GAP}){anchor}"]


# ---------------------------------------------------------------------------------------------
# Finding mentions: a match asserts the observation unless a trigger says otherwise.
# ---------------------------------------------------------------------------------------------
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"enlarged cardiomediastinum",
        r"widened mediastinum",
        r"mediastinal (?:widening|enlargement)",
        r"enlarged mediastin\w*(?: silhouettes?| contours?)?",
        r"cardiomediastinal enlargement",
        *_anchored(MEDIASTINUM, _ENLARGED_Q),
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarged heart",
        r"enlargement of the (?:heart|cardiac silhouette)",
        r"enlarged cardiac (?:silhouette|shadow|contours?|size)",
        *_anchored(HEART, _ENLARGED_Q),
    ],
    "Lung Opacity": [
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"infiltrates?",
        r"infiltration",
        r"air ?space (?:disease|opacit(?:y|ies))",
        r"haziness",
        r"hazy",
        r"ground glass",
        r"reticular (?:opacit(?:y|ies)|markings?|pattern)",
        r"reticulonodular",
        r"interstitial (?:markings?|opacit(?:y|ies)|prominence|disease|pattern|thickening)",
        r"increased (?:lung )?markings",
        r"scarring",
        r"scar",
        r"fibrosis",
        r"fibrotic changes?",
        r"peribronchial (?:cuffing|thickening)",
    ],
    "Lung Lesion": [
        r"nodules?",
        r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))",
        r"masse?s?",
        # a bare "lesion" is as often a bone or skin lesion: only lung / cavitary / mass lesions
        r"(?:lung|pulmonary|parenchymal|cavitary|cavitating|mass|spiculated) lesions?",
        r"neoplasm",
        r"tumou?r",
        r"carcinoma",
        r"metastas[ie]s",
    ],
    "Edema": [
        r"edema",
        r"oedema",
        r"(?:pulmonary )?vascular (?:congestion|engorgement)",
        r"pulmonary congestion",
        r"(?:congestive )?heart failure",
        r"chf",
        r"fluid overload",
        r"kerley b lines",
        r"cephalization",
        # CheXpert counts vascular prominence as edema (and IU's indexers tag it congestion)
        r"(?:central |pulmonary |lung |central pulmonary )?vascular (?:prominence|congestive changes"
        r"|redistribution|indistinctness)",
        r"prominence of the (?:central |pulmonary |lung |upper lobe )*(?:vasculature|vascularity"
        r"|vascular markings|vessels)",
        *_anchored(VASCULATURE, r"(?:increased|prominent|engorged|congested|indistinct)"),
    ],
    "Consolidation": [
        r"consolidations?",
        r"consolidative",
        r"consolidated",
    ],
    "Pneumonia": [
        r"pneumonias?",
        r"bronchopneumonia",
        r"pneumonitis",
        r"infections?",
        r"infectious (?:process|infiltrates?)",
    ],
    "Atelectasis": [
        r"atelectas[ie]s",
        r"atelectatic",
        r"volume loss",
        r"(?:lobar |lobe |lung |segmental )?collapse",
        r"collapsed lung",
        r"plate like",
        r"platelike",
    ],
    "Pneumothorax": [
        r"pneumothora(?:x|ces)",
        r"hydropneumothorax",
    ],
    "Pleural Effusion": [
        r"(?:pleural )?effusions?",
        r"pleural fluid",
        r"hydrothorax",
        r"hydropneumothorax",
        r"blunting of the (?:\w+ )?costophrenic (?:angles?|sulci|sulcus)",
        r"costophrenic (?:angle |sulcus )?blunting",
        r"blunted (?:\w+ )?costophrenic (?:angles?|sulci|sulcus)",
        r"(?:\w+ )?costophrenic (?:angles?|sulci|sulcus) (?:is |are )?blunted",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|calcifications?|scarring|fibrosis)",
        r"pleural parenchymal (?:scarring|thickening|opacit(?:y|ies))",
        r"pleuroparenchymal (?:scarring|thickening|opacit(?:y|ies))",
        r"thickened pleura",
        r"fibrothorax",
        r"apical (?:pleural )?capp?(?:ing)?",
    ],
    "Fracture": [
        r"fractures?",
        r"fractured",
        r"broken ribs?",
    ],
    "Support Devices": [
        r"pacemakers?",
        r"pacer",
        r"(?:cardiac )?defibrillator",
        r"aicd",
        r"icd",
        r"endotracheal tubes?",
        r"et tube",
        r"ett",
        r"tracheostomy(?: tube)?",
        r"(?:nasogastric|orogastric|feeding|enteric|gastric|chest|dobhoff) tubes?",
        r"(?:ng|og) tube",
        r"dobhoff",
        r"(?:central venous|central|venous|jugular|subclavian|picc) (?:line|catheter)s?",
        r"picc",
        r"port a cath",
        r"(?:chest wall |subcutaneous |power )?port",
        r"swan ganz(?: catheter)?",
        r"catheters?",
        r"(?:sternotomy|sternal|surgical) (?:wires?|sutures)",
        r"median sternotomy",
        r"sternotomy",
        r"(?:surgical|vascular) clips",
        r"(?:orthopedic |spinal |fixation )?hardware",
        r"stents?",
        r"(?:prosthetic|mechanical) (?:valve|heart valve)",
        r"valve replacement",
        r"pacing (?:leads?|wires?)",
        r"(?:pacemaker |pacer |icd )?leads?",
        r"drains?",
        r"ivc filter",
        r"lines and tubes",
        r"tubes and lines",
        r"support devices?",
    ],
}

# Phrases that contain a mention but are not that observation.
UNMENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [
        r"(?:pericardial|joint|knee|shoulder) effusions?",
        # a request, not a finding: "limits evaluation for an effusion"
        r"(?:evaluation|evaluate|assessment|assess) (?:of|for) (?:an? |the )?(?:\w+ ){0,2}?(?:effusions?|pleural fluid)",
    ],
    "Edema": [r"(?:soft tissue|subcutaneous|extremity) edema"],
    "Lung Lesion": [
        r"mass effect",
        r"(?:soft tissue|breast|chest wall|mediastinal|hilar|neck|thyroid) (?:mass|masses|lesion|lesions)",
        r"(?:bone|bony|osseous|lytic|sclerotic|blastic|skin) (?:lesions?|mass)",
        # a history is not a finding
        r"history of (?:\w+ ){0,2}(?:malignancy|carcinoma|cancer|tumou?r|metastas[ie]s|masse?s?)",
    ],
    "Lung Opacity": [r"(?:breast|soft tissue|nipple) (?:opacit(?:y|ies)|shadows?)"],
    "Atelectasis": [r"(?:vertebral|vertebral body|compression) collapse"],
    "Fracture": [
        r"(?:healed )?fracture fixation",
        # a broken device is not a broken bone: "the lateral screw is fractured", "lead fracture"
        r"(?:screws?|wires?|catheters?|leads?|hardware|plates?|rods?|devices?) (?:is |are |appears? )?(?:fractures?|fractured)",
        r"fractured (?:\w+ ){0,2}?(?:screws?|wires?|catheters?|leads?|hardware|plates?|rods?|devices?)",
        r"fracture of the (?:\w+ ){0,3}?(?:screws?|wires?|catheters?|leads?|hardware|plates?|rods?|devices?)",
        # a conditional request is not a finding: "if there is concern for fracture, consider ..."
        r"if (?:[\w']+ ){0,4}?concern for (?:\w+ ){0,3}?fractures?",
        r"(?:evaluation|evaluate|assessment|assess) (?:of|for) (?:\w+ ){0,3}?fractures?",
    ],
    "Support Devices": [
        r"(?:pleural|fissure|skin|mach|septal|kerley b) lines?",
        r"leads? to",
        r"leading",
        r"airport",
        r"report",
        r"support",  # "to support" without "devices" is a verb
    ],
    "Pneumonia": [
        r"(?:urinary tract|skin|soft tissue) infections?",
        # old, healed disease is not current pneumonia: "prior granulomatous infection",
        # "sequelae of histoplasmosis infection", "old healed pneumonia"
        r"(?:prior|previous|old|remote|healed|past|chronic)(?: [\w']+){0,2}? (?:infections?|pneumonias?)",
        r"(?:granulomatous|histoplasm\w*|tuberculous|tuberculosis|tb|fungal|mycobacterial)"
        r" (?:infections?|disease)",
        r"sequelae of(?: [\w']+){0,3}? (?:infections?|pneumonias?)",
        # clinical context, not a finding: "history of pneumonia", "correlate for infection"
        r"(?:history of|symptoms of|signs of|clinical (?:signs|symptoms) of)(?: [\w']+){0,2}?"
        r" (?:infections?|pneumonias?)",
        r"correlat\w*(?: [\w']+){0,6}? (?:for|of|with)(?: [\w']+){0,2}? (?:infections?|pneumonias?)",
    ],
}

# Fixed negative assertions: phrase -> observations it makes 0.
NORMAL_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    *[(p, ("Cardiomegaly",)) for p in _anchored(HEART, _NORMAL_Q)],
    *[
        (p, ("Enlarged Cardiomediastinum", "Cardiomegaly"))
        for p in _anchored(MEDIASTINUM, _NORMAL_Q)
    ],
    *[(p, ("Edema",)) for p in _anchored(VASCULATURE, _NORMAL_Q)],
    (rf"{COSTOPHRENIC}({GAP}){_CLEAR_Q}", ("Pleural Effusion",)),
    (rf"(?:sharp|clear|normal|preserved) {COSTOPHRENIC}", ("Pleural Effusion",)),
    (rf"{PLEURAL_SPACES}({GAP})(?:clear|normal|unremarkable)", ("Pleural Effusion", "Pneumothorax")),
    (rf"(?:clear|normal) {PLEURAL_SPACES}", ("Pleural Effusion", "Pneumothorax")),
]

# Fixed uncertain assertions: phrase -> observations it makes -1.
UNCERTAIN_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    *[(p, ("Cardiomegaly",)) for p in _anchored(HEART, _BORDERLINE_Q)],
    *[(p, ("Enlarged Cardiomediastinum",)) for p in _anchored(MEDIASTINUM, _BORDERLINE_Q)],
]

# Fixed phrases are costly to scan (an anchor, a gap, a qualifier); each group is only tried when
# the report holds one of its anchor's stems. Keyed by the group's first observation.
FIXED_GUARDS = {
    "Cardiomegaly": ("heart", "cardi"),
    "Enlarged Cardiomediastinum": ("mediastin",),
    "Edema": ("vascul", "vessel"),
    "Pleural Effusion": ("costophrenic", "pleural space"),
}

# ---------------------------------------------------------------------------------------------
# Triggers. Each entry: (kind, direction, phrases). Matched in this order; each match is masked
# before the next group is searched, so "cannot be excluded" is never read as "not".
# kind: "neg" | "unc" | "pseudo" | "term";  direction: "pre" | "post" | "both".
# ---------------------------------------------------------------------------------------------
TRIGGERS: list[tuple[str, str, list[str]]] = [
    # "no findings to suggest pneumonia" negates; without this "suggest" would make it uncertain.
    (
        "neg",
        "pre",
        [
            # the noun list between "no" and "to suggest" can be long ("no effusion, pneumothorax
            # or interval airspace consolidation to suggest pneumonia"), but not a new clause
            r"(?:no|without|nothing)(?:,? (?!(?:but|however|although|though|which|whereas|and)\b)"
            r"[\w']+){0,12} (?:to suggest|suggest(?:ive|ing) of|to indicate|diagnostic of)",  # greedy: the last one
            # "consistent with" also follows positive findings: a short reach only
            r"(?:no|without|nothing)(?: [\w']+){0,4}? (?:suspicious for|concerning for|worrisome for"
            r"|typical of|compatible with|consistent with)",
        ],
    ),
    # pre-negation uncertainty: looks like negation, means "maybe"
    (
        "unc",
        "post",
        [
            r"(?:cannot|can not|could not|may not|can't) be (?:entirely |completely |fully )?(?:excluded|ruled out|excluded radiographically)",
            r"(?:is |are |was |were )?not (?:entirely |completely |totally )?(?:excluded|ruled out)",
        ],
    ),
    (
        "unc",
        "pre",
        [
            r"(?:cannot|can not|could not|can't|difficult to|unable to) (?:entirely |completely |fully )?(?:exclude|rule out|be excluded)",
            r"not (?:entirely |completely )?(?:excluded|ruled out)",
            r"rule out",
            r"r/o",
        ],
    ),
    (
        "pseudo",
        "pre",
        [
            r"no (?:significant |substantial |appreciable |interval |radiographic )*(?:change|increase|decrease|progression|worsening)",
            r"not (?:significantly )?(?:changed|increased|decreased)",
            r"(?:has |have )?not (?:yet |completely |entirely |fully )?(?:resolved|cleared)",
            r"without (?:significant |substantial |appreciable |interval )*change",
            r"not only",
            r"no longer (?:compress\w*)",
            r"gram negative",
        ],
    ),
    (
        "neg",
        "post",
        [
            r"(?:is |are |was |were |has been |have been )?(?:not|no longer) (?:\w+ )?(?:seen|identified|visualized|visualised|demonstrated|present|evident|appreciated|detected|noted|apparent|observed|visible)",
            r"(?:has |have |had )?disappeared",
            r"(?:has |have |had )?been removed",
            r"(?:is |are |was |were )(?:now )?(?:absent|gone|removed)",
            r"(?:is |are )?unlikely",
            r"(?:is |are |appears? |appear |remains? )?within (?:the )?(?:normal limits|limits of normal)",
            r"(?:is |are )?ruled out",
            r"(?:is |are )?excluded",
        ],
    ),
    ("neg", "both", [r"(?:has |have |had )?(?:resolved|cleared)"]),
    (
        "neg",
        "pre",
        [
            r"no (?:evidence|signs?|findings?|radiographic evidence) of",
            r"negative for",
            r"free of",
            r"clear of",
            r"absence of",
            r"resolution of",
            r"(?:interval )?removal of",
            r"no longer",
            r"without",
            r"no",
            r"not",
            r"nothing",
            r"neither",
            r"nor",
            r"never",
            r"absent",
            r"removed",
            r"rather than",
            r"instead of",
        ],
    ),
    # "suspected pneumonia", "small effusions suspected"
    ("unc", "both", [r"versus", r"vs", r"or less likely", r"and/or", r"suspected"]),
    (
        "unc",
        "post",
        [
            r"(?:is|are|was|were|remains?) (?:also )?(?:possible|suspected|questioned|questionable|a possibility|a consideration|considered)",
            # hedged differentials: "pneumonia is in the differential", "... is another consideration"
            r"(?:is|are|would be|remains?) (?:also )?(?:in the differential|(?:an?|another|also a) (?:\w+ )?(?:consideration|possibility))",
            r"\?",
        ],
    ),
    (
        "unc",
        "pre",
        [
            r"(?:may|might|could|can) (?:be|represent|reflect|indicate|relate to|be due to|be related to|suggest|include)",
            r"(?:may|might|could)",
            r"possible",
            r"possibly",
            r"probable",
            r"probably",
            r"presumed",
            r"presumably",
            r"likely",
            r"questionable",
            r"question(?: of)?",
            r"possibility of",
            r"suspicious for",
            r"suspicion (?:of|for)",
            r"suspect",
            r"suggestion of",
            r"favou?r(?:s|ed|ing)?(?: as)?",
            r"concern(?:ing)? for",
            r"worrisome for",
            r"suggest(?:s|ed|ing|ive of)?",
            r"borderline",
            r"equivocal",
            r"indeterminate",
            r"differential(?: diagnosis| diagnoses| considerations?)?(?: is| are)?(?: [\w']+){0,3}? (?:includes?|including)",
            r"differential(?: diagnosis| diagnoses| considerations?)? (?:is|are|of)",
            r"alternatively",
            r"consider(?:ed)?",
            r"cannot be excluded",
            r"either",
            r"versus",
        ],
    ),
    (
        "term",
        "both",
        [
            r"but",
            r"however",
            r"although",
            r"though",
            r"whereas",
            r"while",
            r"yet",
            r"except(?: for)?",
            r"with the exception of",
            r"aside from",
            r"apart from",
            r"other than",
            r"which",
            # a new clause: "no pneumothorax with a large right effusion"; "with or without" is
            # not one
            r"(?<!compatible )(?<!consistent )(?<!keeping )(?<!associated )(?<!along )with(?! or without)",
            # "no effusion and moderate cardiomegaly": "and" followed by a new finding's modifier
            # or subject ends the scope; a plain list ("no effusion and pneumothorax") does not
            r"and(?= (?:a|an|the|there|this|mild|mildly|moderate|moderately|marked|markedly|severe"
            r"|small|large|minimal|trace|stable|persistent|new|increased|decreased|improved"
            r"|worsening|unchanged)\b)",
            r"there (?:is|are|has been|have been)",
            r"(?:is|are) (?:seen|noted|present|again noted|again seen)",
        ],
    ),
]

POST_SCOPE_WORDS = 12  # how far back a post-trigger reaches ("consolidation, atelectasis and blunting in the left lower lobe have cleared")

# ---------------------------------------------------------------------------------------------
# IU X-Ray MeSH major tags -> CheXpert observations (``agreement``). A tag is positive for an
# observation when its heading is listed and it carries one of the listed qualifiers ("" means
# no qualifier at all; () means any). Why some choices:
# - A borderline heart (Cardiac Shadow/borderline) is uncertain cardiomegaly under CheXpert's
#   rules, and uncertain counts as positive.
# - Lung Opacity includes scarring, fibrosis and interstitial markings; Edema includes
#   congestion, vascular prominence and heart failure (CheXpert's mention lists).
# Left unmapped, and why:
# - Calcified Granuloma, Granuloma, Granulomatous Disease, Calcinosis: healed old infection, not a
#   CheXpert Lung Lesion or Pneumonia (CheXpert's lesion list has no granuloma).
# - Emphysema, Pulmonary Disease, Chronic Obstructive; Lung/hyperdistention, /hypoinflation:
#   lung volumes and COPD are no CheXpert observation.
# - Costophrenic Angle/blunted: the IU radiologists often attribute blunting to scarring or
#   pleural thickening ("chronic blunting ... without definite pleural effusion"), and tag an
#   effusion they see as Pleural Effusion; CheXpert's effusion mentions are "effusion" and
#   "pleural fluid" only.
# - Pericardial Effusion: not pleural. Markings/bronchovascular: normal anatomy unless qualified.
# - Bones and spine, Aorta, Atherosclerosis, Hernia, Diaphragm, Foreign Bodies, Nipple Shadow,
#   Lucency, Density outside the lung: outside CheXpert's 14 (Fracture aside).
# - Technical Quality of Image Unsatisfactory, No Indexing: not findings.
# ---------------------------------------------------------------------------------------------
MESH_RULES: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "Cardiomegaly": [((), ("Cardiomegaly",))],
    "Cardiac Shadow": [(("enlarged", "borderline"), ("Cardiomegaly",))],
    "Mediastinum": [(("enlarged", "prominent", "widened"), ("Enlarged Cardiomediastinum",))],
    "Opacity": [(("lung", "retrocardiac"), ("Lung Opacity",))],
    "Airspace Disease": [((), ("Lung Opacity",))],
    "Infiltrate": [((), ("Lung Opacity",))],
    "Density": [(("lung", "retrocardiac"), ("Lung Opacity",))],
    "Markings": [(("lung",), ("Lung Opacity",))],
    "Cicatrix": [(("lung",), ("Lung Opacity",)), (("pleura",), ("Pleural Other",))],
    "Lung": [(("interstitial",), ("Lung Opacity",))],
    "Pulmonary Fibrosis": [((), ("Lung Opacity",))],
    "Lung Diseases, Interstitial": [((), ("Lung Opacity",))],
    "Nodule": [(("lung", ""), ("Lung Lesion",))],
    "Mass": [(("lung", ""), ("Lung Lesion",))],
    "Pulmonary Edema": [((), ("Edema",))],
    "Pulmonary Congestion": [((), ("Edema",))],
    "Heart Failure": [((), ("Edema",))],
    "Consolidation": [((), ("Consolidation",))],
    "Pneumonia": [((), ("Pneumonia",))],
    "Pulmonary Atelectasis": [((), ("Atelectasis",))],
    "Volume Loss": [((), ("Atelectasis",))],
    "Pneumothorax": [((), ("Pneumothorax",))],
    "Hydropneumothorax": [((), ("Pneumothorax", "Pleural Effusion"))],
    "Hemopneumothorax": [((), ("Pneumothorax",))],
    "Pleural Effusion": [((), ("Pleural Effusion",))],
    "Thickening": [(("pleura",), ("Pleural Other",))],
    "Fractures, Bone": [((), ("Fracture",))],
    "Catheters, Indwelling": [((), ("Support Devices",))],
    "Implanted Medical Device": [((), ("Support Devices",))],
    "Medical Device": [((), ("Support Devices",))],
    "Tube, Inserted": [((), ("Support Devices",))],
    "Stents": [((), ("Support Devices",))],
    "Surgical Instruments": [((), ("Support Devices",))],
}

# The naive baseline's keywords (``agreement.naive_label_report``).
NAIVE_KEYWORDS: dict[str, str] = {
    "Enlarged Cardiomediastinum": r"widened mediastinum|mediastinal widening",
    "Cardiomegaly": r"cardiomegaly|enlarged heart|heart is enlarged|cardiac enlargement",
    "Lung Opacity": r"opacit\w*|infiltrat\w*|airspace disease|scar\w*|fibrosis",
    "Lung Lesion": r"nodules?|mass|masses|tumou?r|lesions?",
    "Edema": r"edema|congestion|chf",
    "Consolidation": r"consolidat\w*",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelecta\w*",
    "Pneumothorax": r"pneumothora\w*",
    "Pleural Effusion": r"effusions?",
    "Pleural Other": r"pleural thickening",
    "Fracture": r"fractur\w*",
    "Support Devices": r"pacemaker|catheter|tube|line|clips?|sternotomy|stent",
}
