"""Technology selection: candidate model families compete on the validation split."""

from .search import CandidateSearch, SearchResult

__all__ = ["CandidateSearch", "SearchResult"]
